"""Caffe's networks without Caffe: read ``.caffemodel``/``.binaryproto`` files, build CaffeNet.

- :mod:`featurizer.caffe.wire`: a protobuf wire-format reader (no generated code, no pickle).
- :mod:`featurizer.caffe.caffemodel`: ``NetParameter``/``BlobProto`` -> named numpy blobs, for both
  the V1 ``layers`` and the current ``layer`` encodings, and the mean-image files.
- :mod:`featurizer.caffe.net`: CaffeNet / BVLC AlexNet as a torch module (Caffe's layer names).
- :mod:`featurizer.caffe.convert`: a ``.caffemodel`` -> verified state_dict, cached once per file.

The backbone records that use them live in :mod:`featurizer.backbones.caffe`.
"""
