"""One-stage SFT of SPHINX-X models with TRL.

- `train.train_from_recipe(path, overrides=None)`: `sphinx-x train RECIPE.yaml` as a function;
- `recipe`: the recipe format, its validation and command-line overrides;
- `data`: LLaMA2-Accessory / LLaVA conversation files, `messages` + `images` datasets, weighted mixtures;
- `collator.SphinxXDataCollator`: TRL's vision collator behind a check that skips and counts bad records;
- `models`: model and processor loading, the freeze policy, LoRA targets, QLoRA, attention.

Nothing is imported here, so that `sphinx_x.training.recipe` (the CLI's arguments) loads without TRL.
"""
