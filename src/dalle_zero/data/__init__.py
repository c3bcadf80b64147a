"""Data: image–caption folders and shards, paper crops, zero-shot splits, the emoji builder and token shards.

- :mod:`.pairs`       what every image–caption dataset shares (items, caption lines, checks, skip counts)
- :mod:`.folder`      ``ImageTextFolder``: images with same-stem ``.txt`` captions (img2dataset layout)
- :mod:`.webdataset`  ``ImageTextShards``: WebDataset tar shards (img2dataset output); ``dalle data shards``
- :mod:`.manifest`    ``ImageTextManifest``: a CSV/JSONL manifest of ``image,caption`` rows
- :mod:`.sources`     ``open_image_text_dataset``: the reader for a ``--data`` path (folder, shards, manifest);
                      ``read_captions``: its captions alone
- :mod:`.metadata`    a dataset folder's ``metadata.jsonl`` and ``splits.json``
- :mod:`.images`      image files as uint8 tensors, uint8 to float, Gaussian blur and the blur augmentation
- :mod:`.transforms`  paper dVAE crop (§1.7), prior crop (§3.5), plain resize, aspect-ratio filter (§5)
- :mod:`.splits`      deterministic zero-shot splits by concept (unseen concepts / compositions)
- :mod:`.emoji`       ``dalle data emoji``: the emoji dataset from pinned npm tarballs (:mod:`.npm`)
- :mod:`.tokens`      pre-encoded dVAE token shards for stage 2 (``dalle encode``)

Nothing is imported here: ``import dalle_zero.data`` stays free of I/O and heavy dependencies.
"""
