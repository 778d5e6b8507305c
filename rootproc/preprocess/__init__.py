"""rootproc.preprocess.preprocessor."""
