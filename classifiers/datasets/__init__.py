"""The official distributions of the papers' benchmark datasets: where they come from, how to get
them safely, and how their images and splits are laid out.

- :mod:`classifiers.datasets.sources`: one :class:`DatasetSource` record per dataset (URL and
  checksums of each official file, with where the checksums come from, and the layout inside);
- :mod:`classifiers.datasets.download`: HTTP download with resume (``Range``) and verification;
- :mod:`classifiers.datasets.archives`: extraction that refuses members outside the target and
  never leaves a half-extracted folder under its final name;
- :mod:`classifiers.datasets.prepare`: "give me the dataset": the user's folder or archive in
  ``--data-dir`` first, a download otherwise, and a clear error saying which file goes where.

Importing this package imports nothing heavy (stdlib only).
"""
