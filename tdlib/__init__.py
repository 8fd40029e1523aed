"""tdlib: text diffusion with masked language models.

A small library behind a hands-on course: a masked language model such as
RoBERTa, trained to denoise text at every masking ratio, becomes a generator
that writes by iterative unmasking.

Glossary (the words the code, the command line, the notebooks and LEARNING_GUIDE use):

- canvas: the token row a sampler writes into, start and end tokens included; its
  masked positions are the ones still to write, its given positions (prompt, frame) stay.
- mask ratio t: the share of positions hidden by the forward process, in [0, 1]
  (`--mask-ratios`; the original experiment spelled it `--mask-probs`).
- denoiser: anything that maps a canvas to logits at every position, a network or an
  exact model (`tdlib.oracle`, `tdlib.toylang`).
- forward pass: one call of the denoiser on the whole batch of canvases.
- step: one round of the sampler: one forward pass, then reveals (`--steps` is the
  number of steps; ``threshold`` and ``entropy-bound`` may stop a block early, so
  they use at most that many forward passes).
- reveal: to replace a masked position by a drawn token; a pass that reveals several
  positions draws each from its own conditional, independently.
- plan: which positions each step reveals (a schedule says how many; ``dilated`` fixes
  which, in advance; `tdlib.schedules`).
- clash: words revealed together that cannot stand together; the canvas is then
  impossible, and an exact denoiser has no answer on it (`tdlib.price.first_clash`).

Module map: one concept per module, in three layers. The core computes and
knows nothing of screens. The drawing layer turns what the core returns
(metrics records, trajectories, schedules) into text, HTML and figures; it
never trains or samples on its own, and no core module imports it. The
command line, like the course's notebooks, only wires the two together.

Core, training (a run flows corpus -> examples -> collator -> loop -> checkpoint):

- `tdlib.data`        corpora (WikiText-2, Python's reference manual, the generated toy
                      language, text files) and training examples, one per line or
                      packed into full blocks
- `tdlib.model`       load, build, save and reload networks with their tokenizers:
                      masked LMs (MiniLM, a small RoBERTa or convolutional network
                      from scratch, hub models) and the causal baseline; `as_denoiser`
                      adapts one to the sampler
- `tdlib.convnet`     the toy preset's network: a small convolutional masked LM,
                      registered with the Hugging Face Auto classes
- `tdlib.heads`       network surgery: the LM head run at masked positions only, a new
                      head's start, dropout, frozen layers, optimizer groups
- `tdlib.masking`     the forward process (mask at ratio t, protected positions), the
                      training collator and its masking modes, the mask ratios
- `tdlib.objectives`  what the loop minimises, each with its batches and evaluation:
                      the masked diffusion loss and its weightings, the causal baseline
- `tdlib.config`      the settings: `TrainConfig`, whose defaults are the original
                      experiment, and the training `PRESETS`
- `tdlib.train`       the learning-rate schedule and the loop; it holds the run directory's
                      lock while it trains
- `tdlib.callbacks`   hooks into the loop: the clock budget, SIGTERM, the progress bar,
                      watchers of metrics records
- `tdlib.checkpoint`  the run directory on disk: checkpoints, the `latest` file, the
                      resume state, the lock of the one process training in it;
                      validating and resolving checkpoints
- `tdlib.runlog`      a run's `metrics.jsonl`: its writer, its reader, the event names
                      and whether the run has ended

Core, generation:

- `tdlib.schedules`   unmasking schedules: how many tokens stay masked after each step,
                      and the blocks of semi-autoregressive generation
- `tdlib.sample`      the sampler: `SamplerConfig` (every option, its default and check),
                      the step loop, and the `Trajectory` it records
- `tdlib.strategies`  which positions a step reveals (the `REVEAL` registry), remasking;
                      each rule in plain form, fast paths below it
- `tdlib.draws`       from log-probabilities to tokens: temperature, the one
                      greedy/top-k/nucleus filter (`filter_log_probs`), exact draws, entropy
- `tdlib.canvas`      prompt to canvas and back to text: `build_canvas`, `generate`
- `tdlib.pieces`      tokenizer pieces: the "##", "Ġ", "▁", "Ċ" rules, for sampling and display

Core, evaluation and ground truth:

- `tdlib.evaluate`    loss per mask ratio, the NELBO, the K-level discrete bound and the
                      causal baseline's exact NLL, in bits per character
- `tdlib.metrics`     text metrics of samples: distinct-n, entropy, repetition,
                      self-BLEU, generative perplexity, MAUVE
- `tdlib.sweep`       sample quality against the number of steps: the sampler over a
                      grid of strategies, schedules and step counts, each cell scored
- `tdlib.oracle`      exact hidden Markov models: denoisers with known answers, for
                      testing samplers and bounds without a trained network
- `tdlib.toylang`     a toy English language on an exact HMM, with its tokenizer, its
                      exact denoiser, its entropy rate and a grammaticality check
- `tdlib.errors`      `UserError`: a mistake the user can fix, which the command line
                      reports in one line

Drawing:

- `tdlib.render`      pure rendering with no Jupyter import: tokens and trajectories as
                      text, HTML, an HTML player or a GIF
- `tdlib.tables`      the explorers' tables as HTML: a schedule step by step, and the
                      sampler's own filter on one distribution
- `tdlib.plots`       matplotlib figures of metrics records, schedules and sweeps
- `tdlib.widgets`     thin ipywidgets shells over `render`, `tables` and `plots`: the denoising
                      scrubber, the live loss view, the schedule, sampling and masking explorers

Wiring:

- `tdlib.cli`         the `tdlib` command: argument parsing and error reporting, one
                      module per subcommand (`cli.train`, `cli.generate`,
                      `cli.evaluate`, `cli.monitor`, `cli.demo`)
- `tdlib.__main__`    `python -m tdlib`, the same program as the console script
"""

__version__ = "0.1.0"
