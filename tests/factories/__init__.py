"""Builders shared by the tests: small real data, models and processes, nothing mocked.

- ``emoji``: tiny emoji-datasource and emojibase tarballs, and the dataset built from them;
- ``folders``: image folders, the same pairs through every reader, drawn captions;
- ``shapes``: a labelled image set in the emoji dataset's layout (the evaluator's tests);
- ``clip``: coloured shapes in memory with a tokenizer and a tiny CLIP train config;
- ``prior``: tiny token shards, a tokenizer and a tiny prior train config;
- ``pipelines``: a tiny real pipeline (BPE, dVAE, prior, CLIP);
- ``toy``: a toy model and task for the shared training loop, and a run of it;
- ``processes``: several CPU processes started with torchrun (gloo);
- ``server``: a real server on an ephemeral port and clients for it.

Test modules import from here, never from each other.
"""
