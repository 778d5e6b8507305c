"""Feature-store records to the columnar batch the trim plans read.

- `preprocessor`: `Preprocessor`, one per installed config: the features its
  models read, their transforms, compiled once; `build` makes a request's
  batch with the record program (`_trim.records`, compiled, or its numpy
  reference with ``TRIMMER_IMPL=reference``)
- `steps`: the config's features as the record program's steps (where each
  raw field lies, which transform in which dtype, which column it fills)
- `untrimmed`: `Untrimmed`, the savings metric's counterfactual: the size
  of the message every schema feature would make for a request (what
  ``trim: off`` sends), from a trimmed batch and the request's records
"""
