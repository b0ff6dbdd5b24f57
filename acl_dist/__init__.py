"""acl-dist: unsupervised temporal action localisation (ACL, CVPR 2020) on Ray.

Pure cores (``timegrid``, ``store``, ``annotations``, ``ingest``, ``synth``, ``cluster``,
``evaluate``) import neither Ray nor torch.distributed; the Ray layer sits on top of them.
"""

__version__ = "0.1.0"
