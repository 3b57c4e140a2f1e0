"""Image decoding, the OVA + 3-class ensemble, model artifacts and the batch runner.

Imports nothing else of wbcv's: ``validation`` and the command line build on it.
"""
