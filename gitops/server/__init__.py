"""The gitops server: OpenSSH forced commands and git hooks that enforce the protocol.

Layout of a server directory (``gitops server init``): ``fleet.git`` holds ``main``, every
``deploy/<host>`` and a fan-in copy of every ``reports/<host>`` (for the publisher and the
site); ``hosts/<host>.git`` holds only that host's two branches (read isolation: a host
cannot obtain an object its repository does not hold, and a report push receives a
two-ref advertisement whatever the fleet's size). ``authorized_keys`` maps each key to one
identity; ``hooks/`` checks every push. ``maintain`` packs what pushes leave loose and
``archive`` marks each host's reports month by month, never rewriting them. See
docs/server.md.
"""
