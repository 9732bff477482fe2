"""The static fleet dashboard: read the repository, verify every signature, render pages.

The pipeline, one module per step (:mod:`build` runs it, in named phases):

* :mod:`collect` reads git into :mod:`model` values, checking every signature with
  :mod:`verify`; :mod:`cache` keeps what was read and verified between builds;
* :mod:`states` and :mod:`compliance` judge each host; :mod:`derived` keeps the small
  row of each host the fleet-wide pages need; :mod:`workers` does all of that for one
  host, end to end, in a worker process, and renders its pages (:mod:`pages`);
* :mod:`overview` sums the rows up for the fleet (problems, drift, charts via
  :mod:`charts`, the audit trail of :mod:`audit`) and lists the aggregate pages;
* :mod:`render` (HTML through the templates in ``site/``) and :mod:`export` (JSON) write
  them; :mod:`outdir` puts them into a new directory and swaps it in.
"""
