"""The online feature store: feature definitions as data, an incremental engine that matches the batch
library to 1e-9, a Redis (or in-process) store of the latest feature vector per symbol, and the streamer
that feeds it (``alphaforge stream``). Nothing is imported here eagerly; import the submodules."""
