"""The static fleet dashboard: read the repository, verify every signature, render pages.

One module per step: :mod:`collect` reads git into :mod:`model` values (signatures
checked, results cached by :mod:`cache`), :mod:`states` and :mod:`compliance` judge each
host, :mod:`audit` builds the trail, :mod:`charts` draws inline SVG, :mod:`render` and
:mod:`export` write HTML and JSON, and :mod:`build` runs them in order.
"""
