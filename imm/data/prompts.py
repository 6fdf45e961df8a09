"""Few-shot chain-of-thought prompts in the paper's format (its Tables 11 and 12).

``build_prompt(question, "gsm8k", shots=10)`` returns the text a base model continues: the
instruction header, ``shots`` worked examples ("Question: ... A: Let's think step by step. ...
The answer is X"), then the question under "### Instruction:" and "### Response: Let's think step
by step.". ``dataset`` is an exemplar set (``gsm8k``, ``math``, ``choice``) or any benchmark name of
``imm.data.benchmarks`` (which names the set it uses). A sample is cut at ``STOP_STRINGS``
(``imm.grading.answers``: a new "Question:", "### Instruction", ... at a line start): past them the
model is writing the next exemplar of an imagined prompt.

The exemplars ship as data below. GSM8K: the three GSM8K training problems the paper's Table 11
shows (Angelo and Melanie, Mark's basketball team, Bella's marbles), in its text with the
extraction's escaped asterisks and "l unch" repaired, then seven more written for imm in their
style: multi-step word problems, one step a line (the paper prints only those three). MATH: the
three visible in the paper's Table 12, the four Minerva exemplars (Lewkowycz et al., 2022) and
three more in their style. Multiple choice (MathQA, SAT, MMLU-STEM): ten short
problems with lettered options, so the model ends with a letter.
"""

from __future__ import annotations

HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request like given examples below:")
INSTRUCTION = "### Instruction:\n{question}\n\n### Response: Let's think step by step."
EXEMPLAR = "Question: {question}\nA: Let's think step by step.\n{rationale}\nThe answer is {answer}"

# (question, rationale, final answer as it follows "The answer is")
GSM8K = (
    # the three exemplars the paper's Table 11 shows (GSM8K training problems), as printed there
    ("Angelo and Melanie want to plan how many hours over the next week they should study together for their "
     "test next week. They have 2 chapters of their textbook to study and 4 worksheets to memorize. They figure "
     "out that they should dedicate 3 hours to each chapter of their textbook and 1.5 hours for each worksheet. "
     "If they plan to study no more than 4 hours each day, how many days should they plan to study total over "
     "the next week if they take a 10-minute break every hour, include 3 10-minute snack breaks each day, and "
     "30 minutes for lunch each day?",
     "Angelo and Melanie think they should dedicate 3 hours to each of the 2 chapters, 3 hours x 2 chapters = 6 "
     "hours total.\n"
     "For the worksheets they plan to dedicate 1.5 hours for each worksheet, 1.5 hours x 4 worksheets = 6 hours "
     "total.\n"
     "Angelo and Melanie need to start with planning 12 hours to study, at 4 hours a day, 12/4 = 3 days.\n"
     "However, they need to include time for breaks and lunch. Every hour they want to include a 10-minute "
     "break, so 12 total hours x 10 minutes = 120 extra minutes for breaks.\n"
     "They also want to include 3 10-minute snack breaks, 3 x 10 minutes = 30 minutes.\n"
     "And they want to include 30 minutes for lunch each day, so 120 minutes for breaks + 30 minutes for snack "
     "breaks + 30 minutes for lunch = 180 minutes, or 180 / 60 minutes per hour = 3 extra hours.\n"
     "So Angelo and Melanie want to plan 12 hours to study + 3 hours of breaks = 15 hours total.\n"
     "They want to study no more than 4 hours each day, 15 hours / 4 hours each day = 3.75\n"
     "They will need to plan to study 4 days to allow for all the time they need.", "4"),
    ("Mark's basketball team scores 25 2 pointers, 8 3 pointers and 10 free throws. Their opponents score "
     "double the 2 pointers but half the 3 pointers and free throws. What's the total number of points scored "
     "by both teams added together?",
     "Mark's team scores 25 2 pointers, meaning they scored 25*2=50 points in 2 pointers.\n"
     "His team also scores 6 3 pointers, meaning they scored 8*3=24 points in 3 pointers\n"
     "They scored 10 free throws, and free throws count as one point so they scored 10*1=10 points in free "
     "throws.\n"
     "All together his team scored 50+24+10=84 points\n"
     "Mark's opponents scored double his team's number of 2 pointers, meaning they scored 50*2=100 points in "
     "2 pointers.\n"
     "His opponents scored half his team's number of 3 pointers, meaning they scored 24/2= 12 points in 3 "
     "pointers.\n"
     "They also scored half Mark's team's points in free throws, meaning they scored 10/2=5 points in free "
     "throws.\n"
     "All together Mark's opponents scored 100+12+5=117 points\n"
     "The total score for the game is both team's scores added together, so it is 84+117=201 points", "201"),
    ("Bella has two times as many marbles as frisbees. She also has 20 more frisbees than deck cards. If she "
     "buys 2/5 times more of each item, what would be the total number of the items she will have if she "
     "currently has 60 marbles?",
     "When Bella buys 2/5 times more marbles, she'll have increased the number of marbles by 2/5*60 = 24\n"
     "The total number of marbles she'll have is 60+24 = 84\n"
     "If Bella currently has 60 marbles, and she has two times as many marbles as frisbees, she has 60/2 = 30 "
     "frisbees.\n"
     "If Bella buys 2/5 times more frisbees, she'll have 2/5*30 = 12 more frisbees.\n"
     "The total number of frisbees she'll have will increase to 30+12 = 42\n"
     "Bella also has 20 more frisbees than deck cards, meaning she has 30-20 = 10 deck cards\n"
     "If she buys 2/5 times more deck cards, she'll have 2/5*10 = 4 more deck cards.\n"
     "The total number of deck cards she'll have is 10+4 = 14\n"
     "Together, Bella will have a total of 14+42+84 = 140 items", "140"),
    # seven more, written for imm in the same style (multi-step word problems, one step a line)
    ("A bakery sells muffins for $3 each and cookies for $1.50 each. On Saturday it sold 48 muffins and twice "
     "as many cookies. On Sunday it sold a third fewer muffins than on Saturday and 30 cookies. How much money "
     "did the bakery make over the weekend?",
     "On Saturday the bakery sold 48 muffins for 48*3 = 144 dollars.\n"
     "It sold twice as many cookies as muffins, 48*2 = 96 cookies, for 96*1.5 = 144 dollars.\n"
     "So on Saturday it made 144+144 = 288 dollars.\n"
     "On Sunday it sold a third fewer muffins, 48/3 = 16 fewer, so 48-16 = 32 muffins for 32*3 = 96 dollars.\n"
     "The 30 cookies on Sunday brought 30*1.5 = 45 dollars, so on Sunday it made 96+45 = 141 dollars.\n"
     "Over the weekend the bakery made 288+141 = 429 dollars", "429"),
    ("Carla is filling her swimming pool with two hoses. The first hose puts in 12 gallons a minute and the "
     "second 8 gallons a minute, but the pool leaks 2 gallons a minute. The pool holds 1,800 gallons and "
     "already has 720 gallons in it. How many minutes will it take to fill the pool?",
     "Together the two hoses put in 12+8 = 20 gallons a minute.\n"
     "The pool leaks 2 gallons a minute, so it fills by 20-2 = 18 gallons a minute.\n"
     "The pool still needs 1800-720 = 1080 gallons.\n"
     "At 18 gallons a minute that takes 1080/18 = 60 minutes", "60"),
    ("Jamal earns $20 an hour and works 8 hours a day, 5 days a week. He gets paid time and a half for every "
     "hour over 40 in a week. Last week he also worked 6 hours on Saturday. He spends a quarter of his weekly "
     "pay on rent and puts $150 into savings. How much money does he have left from last week's pay?",
     "From Monday to Friday Jamal worked 8*5 = 40 hours, which pays 40*20 = 800 dollars.\n"
     "The 6 hours on Saturday are over 40, so they pay time and a half, 20*1.5 = 30 dollars an hour.\n"
     "Saturday paid 6*30 = 180 dollars, so his pay for the week was 800+180 = 980 dollars.\n"
     "Rent takes a quarter of it, 980/4 = 245 dollars.\n"
     "After rent and savings he has 980-245-150 = 585 dollars left", "585"),
    ("A school is taking 3 classes on a field trip. The classes have 28, 31 and 25 students, and each class "
     "brings 3 adults. Each bus holds 40 people and costs $120. Museum tickets cost $6 for a student and $10 "
     "for an adult. How much will the school pay for the buses and the tickets?",
     "There are 28+31+25 = 84 students and 3*3 = 9 adults, so 84+9 = 93 people go on the trip.\n"
     "Each bus holds 40 people, and 93/40 = 2.325, so the school needs 3 buses.\n"
     "The buses cost 3*120 = 360 dollars.\n"
     "The student tickets cost 84*6 = 504 dollars and the adult tickets 9*10 = 90 dollars.\n"
     "In total the school pays 360+504+90 = 954 dollars", "954"),
    ("Priya bought a laptop that cost $900. She paid 20% of the price up front and the rest in 6 equal monthly "
     "payments. The store also charged a $30 fee that was added to the first payment. How much was her first "
     "monthly payment?",
     "Priya paid 900*20/100 = 180 dollars up front.\n"
     "She still owed 900-180 = 720 dollars, paid in 6 equal payments of 720/6 = 120 dollars.\n"
     "With the fee added, her first payment was 120+30 = 150 dollars", "150"),
    ("A farmer has 120 chickens, and each chicken lays 5 eggs a week. He keeps 24 eggs a week for his family "
     "and sells the rest in cartons of a dozen for $4 a carton. How much money does he make from eggs in 4 "
     "weeks?",
     "The chickens lay 120*5 = 600 eggs a week.\n"
     "After keeping 24 for his family he sells 600-24 = 576 eggs a week.\n"
     "That is 576/12 = 48 cartons a week, which bring 48*4 = 192 dollars.\n"
     "In 4 weeks he makes 192*4 = 768 dollars", "768"),
    ("Ms. Lopez drives to work and back, 18 miles each way, 5 days a week, and drives another 45 miles on the "
     "weekend. Her car goes 30 miles on a gallon of gas, and gas costs $4 a gallon. How much does she spend "
     "on gas in a week?",
     "Each work day she drives 18*2 = 36 miles, so in 5 days she drives 36*5 = 180 miles.\n"
     "With the weekend she drives 180+45 = 225 miles a week.\n"
     "Her car needs 225/30 = 7.5 gallons for that.\n"
     "The gas costs 7.5*4 = 30 dollars", "30"),
)

MATH = (
    ("Kevin Kangaroo begins hopping on a number line at 0. He wants to get to 1, but he can hop only "
     "$\\frac{1}{3}$ of the distance. Each hop tires him out so that he continues to hop $\\frac{1}{3}$ "
     "of the remaining distance. How far has he hopped after five hops? Express your answer as a "
     "common fraction.",
     "Kevin hops $1/3$ of the remaining distance with every hop. His first hop takes $1/3$ closer. For "
     "his second hop, he has $2/3$ left to travel, so he hops forward $(2/3)(1/3)$. For his third hop, "
     "he has $(2/3)^2$ left to travel, so he hops forward $(2/3)^2(1/3)$. In general, Kevin hops "
     "forward $(2/3)^{k-1}(1/3)$ on his $k$th hop. We want to find how far he has hopped after five "
     "hops. This is a finite geometric series with first term $1/3$, common ratio $2/3$, and five "
     "terms. Thus, Kevin has hopped $\\frac{\\frac{1}{3}\\left(1-\\left(\\frac{2}{3}\\right)^5\\right)}"
     "{1-\\frac{2}{3}} = \\boxed{\\frac{211}{243}}$.", "$\\frac{211}{243}$"),
    ("What is the area of the region defined by the equation $x^2+y^2 - 7 = 4y-14x+3$?",
     "We rewrite the equation as $x^2 + 14x + y^2 - 4y = 10$ and then complete the square, resulting "
     "in $(x+7)^2-49 + (y-2)^2-4=10$, or $(x+7)^2+(y-2)^2=63$. This is the equation of a circle with "
     "center $(-7, 2)$ and radius $\\sqrt{63}$, so the area of this region is "
     "$\\pi r^2 = \\boxed{63\\pi}$.", "63\\pi"),
    ("If $x^2+y^2=1$, what is the largest possible value of $|x|+|y|$?",
     "If $(x,y)$ lies on the circle, so does $(x,-y)$, $(-x,y)$, and $(-x,-y)$ (which all give the "
     "same value of $|x| + |y|$), so we can assume that $x \\ge 0$ and $y \\ge 0$. Then "
     "$|x| + |y| = x + y$. Squaring, we get $(x + y)^2 = x^2 + 2xy + y^2 = 1 + 2xy$. Note that "
     "$(x - y)^2 \\ge 0$. Expanding, we get $x^2 - 2xy + y^2 \\ge 0$, so $2xy \\le x^2 + y^2 = 1$. "
     "Hence, $1 + 2xy \\le 2$, which means $x + y \\le \\sqrt{2}$. Equality occurs when "
     "$x = y = \\frac{1}{\\sqrt{2}}$, so the maximum value of $|x| + |y|$ is $\\boxed{\\sqrt{2}}$.",
     "\\sqrt{2}"),
    ("Find the domain of the expression $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
     "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so "
     "$5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.", "[2,5)"),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = "
     "(2)(12) = \\boxed{24}.$", "24"),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, "
     "how many times must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ "
     "pounds of weight. If he lifts two 15-pound weights instead for $n$ times, he will lift a total "
     "of $2\\cdot15\\cdot n=30n$ pounds of weight. Equating this to 480 pounds, we can solve for $n$: "
     "$30n=480$, so $n=480/30=\\boxed{16}$.", "16"),
    ("If the system of equations $6x-4y=a$, $6y-9x=b$ has a solution $(x, y)$ where $x$ and $y$ are "
     "both nonzero, find $\\frac{a}{b},$ assuming $b$ is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain $6y-9x=-\\frac{3}{2}a.$ Since we "
     "also know that $6y-9x=b$, we have $-\\frac{3}{2}a=b$, so $\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$",
     "-\\frac{2}{3}"),
    ("What is the remainder when $2^{10}$ is divided by $7$?",
     "We have $2^3 = 8 \\equiv 1 \\pmod 7$, so $2^9 = (2^3)^3 \\equiv 1 \\pmod 7$ and "
     "$2^{10} = 2 \\cdot 2^9 \\equiv 2 \\pmod 7$. The remainder is $\\boxed{2}$.", "2"),
    ("How many positive divisors does $36$ have?",
     "We factor $36 = 2^2 \\cdot 3^2$. A divisor is $2^a 3^b$ with $0 \\le a \\le 2$ and "
     "$0 \\le b \\le 2$, so there are $(2+1)(2+1) = \\boxed{9}$ positive divisors.", "9"),
    ("Simplify $\\sqrt{50} + \\sqrt{18}$.",
     "We have $\\sqrt{50} = \\sqrt{25 \\cdot 2} = 5\\sqrt{2}$ and $\\sqrt{18} = \\sqrt{9 \\cdot 2} = "
     "3\\sqrt{2}$, so the sum is $5\\sqrt{2} + 3\\sqrt{2} = \\boxed{8\\sqrt{2}}$.", "8\\sqrt{2}"),
)

CHOICE = (
    ("If 3x + 7 = 22, what is the value of x?\nAnswer Choices: (A) 3 (B) 5 (C) 7 (D) 15",
     "Subtracting 7 from both sides gives 3x = 15. Dividing both sides by 3 gives x = 5.", "(B)"),
    ("A shirt that costs $40 is on sale for 25% off. What is the sale price?\n"
     "Answer Choices: (A) $10 (B) $15 (C) $30 (D) $35",
     "25% of 40 dollars is 0.25 * 40 = 10 dollars. The sale price is 40 - 10 = 30 dollars.", "(C)"),
    ("A train travels 240 km in 3 hours. What is its average speed?\n"
     "Answer Choices: (A) 60 km/h (B) 70 km/h (C) 90 km/h (D) 720 km/h (E) 80 km/h",
     "Average speed is distance divided by time: 240 / 3 = 80 km/h.", "(E)"),
    ("What is the area of a circle with radius 3?\nAnswer Choices: (A) 9\\pi (B) 6\\pi (C) 3\\pi (D) 12\\pi",
     "The area of a circle is \\pi r^2 = \\pi * 3^2 = 9\\pi.", "(A)"),
    ("Which of the following is a prime number?\nAnswer Choices: (A) 21 (B) 27 (C) 33 (D) 29",
     "21 = 3 * 7, 27 = 3 * 9 and 33 = 3 * 11 are not prime. 29 has no divisors other than 1 and itself.",
     "(D)"),
    ("The ratio of boys to girls in a class is 3 : 5. If there are 40 students, how many girls are there?\n"
     "Answer Choices: (A) 25 (B) 15 (C) 24 (D) 30",
     "The class has 3 + 5 = 8 parts, so each part is 40 / 8 = 5 students. The girls are 5 parts, "
     "5 * 5 = 25.", "(A)"),
    ("What is the derivative of x^3 with respect to x?\nAnswer Choices: (A) x^2 (B) 3x (C) x^4/4 (D) 3x^2",
     "By the power rule, the derivative of x^n is n x^(n-1), so the derivative of x^3 is 3x^2.", "(D)"),
    ("If the mean of 4, 8, x and 10 is 7, what is x?\nAnswer Choices: (A) 5 (B) 6 (C) 7 (D) 8",
     "The four numbers sum to 4 * 7 = 28. The known ones sum to 4 + 8 + 10 = 22, so x = 28 - 22 = 6.",
     "(B)"),
    ("Which quantity is measured in newtons?\nAnswer Choices: (A) Energy (B) Power (C) Force (D) Pressure",
     "The newton is the SI unit of force: 1 N = 1 kg m/s^2. Energy is in joules, power in watts and "
     "pressure in pascals.", "(C)"),
    ("A rectangle has a perimeter of 30 and a length of 9. What is its width?\n"
     "Answer Choices: (A) 6 (B) 12 (C) 21 (D) 3 (E) 15",
     "The perimeter is 2 * (9 + w) = 30, so 9 + w = 15 and w = 6.", "(A)"),
)

# The world's own short exemplars (``dataset.exemplars=world``), for models the paper's long GSM8K ones
# overwhelm: a loss, a gain, a product and two steps, with names, objects and numbers of their own (a
# world question never repeats one). With 1 paper shot SmolLM2-135M-Instruct answered 13% of the one-step
# validation items and stated no final answer on a quarter; with these four, 20% and every time.
WORLD = (
    ("Kate has 24 balloons. She gives away 7. How many balloons does she have now?",
     "Kate starts with 24 balloons.\nShe gives away 7, so she has 24 - 7 = 17 balloons.", "17"),
    ("There are 35 chairs in a hall. Paul adds 16. How many chairs are in the hall now?",
     "The hall starts with 35 chairs.\nPaul adds 16, so there are 35 + 16 = 51 chairs.", "51"),
    ("Nina has 6 jars with 4 buttons in each jar. How many buttons does she have?",
     "Each of the 6 jars holds 4 buttons.\nSo she has 6 * 4 = 24 buttons.", "24"),
    ("Omar has 18 rocks. He collects 5 more and then drops 9. How many rocks does he have now?",
     "Omar starts with 18 rocks.\nHe collects 5 more: 18 + 5 = 23 rocks.\nHe drops 9: 23 - 9 = 14 rocks.", "14"),
)

PAPER_EXEMPLARS = {"gsm8k": GSM8K, "math": MATH, "choice": CHOICE}  # the sets every benchmark names
EXEMPLARS = PAPER_EXEMPLARS | {"world": WORLD}


def exemplar_set(dataset: str) -> tuple[tuple[str, str, str], ...]:
    """The worked examples for an exemplar set name or a benchmark name."""
    if dataset in EXEMPLARS:
        return EXEMPLARS[dataset]
    from imm.data.benchmarks import get  # the benchmark names which set it is prompted with

    return EXEMPLARS[get(dataset).prompt]


def build_prompt(question: str, dataset: str, shots: int = 10) -> str:
    """The paper's few-shot prompt for one question; the model continues after "step by step."."""
    examples = exemplar_set(dataset)
    if not 0 <= shots <= len(examples):
        raise ValueError(f"shots={shots} must be in [0, {len(examples)}] for {dataset!r}")
    parts = [HEADER]
    parts += [EXEMPLAR.format(question=q, rationale=r, answer=a) for q, r, a in examples[:shots]]
    parts.append(INSTRUCTION.format(question=question.strip()))
    return "\n\n".join(parts)
