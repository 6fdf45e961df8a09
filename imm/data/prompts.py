"""Few-shot chain-of-thought prompts in the paper's format (its Tables 11 and 12).

``build_prompt(question, "gsm8k", shots=10)`` returns the text a base model continues: the
instruction header, ``shots`` worked examples ("Question: ... A: Let's think step by step. ...
The answer is X"), then the question under "### Instruction:" and "### Response: Let's think step
by step.". ``dataset`` is an exemplar set (``gsm8k``, ``math``, ``choice``) or any benchmark name of
``imm.data.benchmarks`` (which names the set it uses). A sample is cut at ``STOP_STRINGS``
(``imm.grading.answers``: a new "Question:", "### Instruction", ... at a line start): past them the
model is writing the next exemplar of an imagined prompt.

The exemplars ship as data below. GSM8K: the eight of Wei et al. (2022) and two more in their
style. MATH: the three visible in the paper's Table 12, the four Minerva exemplars (Lewkowycz et
al., 2022) and three more in their style. Multiple choice (MathQA, SAT, MMLU-STEM): ten short
problems with lettered options, so the model ends with a letter.
"""

from __future__ import annotations

HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request like given examples below:")
INSTRUCTION = "### Instruction:\n{question}\n\n### Response: Let's think step by step."
EXEMPLAR = "Question: {question}\nA: Let's think step by step.\n{rationale}\nThe answer is {answer}"

# (question, rationale, final answer as it follows "The answer is")
GSM8K = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
     "are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there "
     "must have been 21 - 15 = 6.", "6"),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.", "5"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After "
     "eating 35, they had 74 - 35 = 39.", "39"),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
     "lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
     "20 - 12 = 8.", "8"),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
     "does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
     "5 + 4 = 9.", "9"),
    ("There were nine computers in the server room. Five more computers were installed each day, from "
     "monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29.", "29"),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How "
     "many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing "
     "2 more, he had 35 - 2 = 33 golf balls.", "33"),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
     "23 - 15 dollars left. 23 - 15 is 8.", "8"),
    ("A baker made 48 cupcakes. She sold 3 boxes of 6 cupcakes each and gave 5 cupcakes to her "
     "neighbor. How many cupcakes does she have left?",
     "The baker sold 3 boxes of 6 cupcakes, which is 3 * 6 = 18 cupcakes. She also gave away 5, so "
     "18 + 5 = 23 cupcakes are gone. She has 48 - 23 = 25 cupcakes left.", "25"),
    ("Tom reads 12 pages of a book every day. The book has 180 pages. After reading for 9 days, how "
     "many pages does he still have to read?",
     "In 9 days Tom reads 12 * 9 = 108 pages. The book has 180 pages, so he still has 180 - 108 = 72 "
     "pages to read.", "72"),
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

EXEMPLARS = {"gsm8k": GSM8K, "math": MATH, "choice": CHOICE}


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
