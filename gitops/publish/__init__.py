"""Stage 1, publish: render each host's deploy tree from ``main`` and write signed
commits on ``deploy/<host>``; sync with and push to the git server."""
