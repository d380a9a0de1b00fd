"""Data: tokenizer and dictionary, answers, VQA 2.0, Visual Genome, GloVe, feature stores, Flickr30k Entities,
and the synthetic scenes."""
