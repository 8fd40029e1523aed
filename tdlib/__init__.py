"""tdlib: text diffusion with masked language models.

A small library behind a hands-on course: a masked language model such as
RoBERTa, trained to denoise text at every masking ratio, becomes a generator
that writes by iterative unmasking. Modules, one concept each:

- `tdlib.data`       corpora, tokenizing, making examples (lines or packed)
- `tdlib.model`      load or build a masked LM and its tokenizer; save/reload
- `tdlib.masking`    the forward process and the training collator
- `tdlib.schedules`  how many tokens stay masked after each sampling step
- `tdlib.sample`     the sampler and its trajectories
- `tdlib.train`      the training loop, checkpoints, resume, metrics
- `tdlib.evaluate`   likelihood bounds and sample metrics
- `tdlib.plots`, `tdlib.widgets`  drawing what the core returns
- `tdlib.cli`        the `tdlib` command line
"""

__version__ = "0.1.0"
