"""The resource plan of a job, before it runs: ``memory`` sizes a model and what SFT and sampling need
of a GPU (the resource model); ``job`` plans one job from its config against what it asks for.

    python -m imm.main run.dry_run=true model=qwen2.5-1.5b-instruct dataset=gsm8k
"""
