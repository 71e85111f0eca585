"""Everything that touches a Darknet build: where builds are (``home``), the
cffi binding (``network``, compiled by ``_build`` from ``_shim*.c``), the
binary run as a subprocess (``runner``), detection through upstream's decode
(``detect``), images prepared as Darknet prepares them (``images``) and the
example models' data (``examples``).  A side branch of the data flow: nothing
outside ``analysis/``, ``structured/``, ``workflow/`` and ``cli/`` imports it.

``darknet_sparse.darknet.Network(cfg, weights)`` is the public entry point.
"""
from .network import Network, backend, build_info, check_files, seed

__all__ = ["Network", "backend", "build_info", "check_files", "seed"]
