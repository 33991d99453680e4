"""Siphera reference client: end-to-end encrypted messaging with Olm/Megolm (vodozemac).

`python -m siphera_client --help` for the command line; `Client` for programs.
"""

from siphera_client.api import ApiError
from siphera_client.client import Client, Received

__all__ = ["ApiError", "Client", "Received"]
