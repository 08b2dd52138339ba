"""Secret-sharing protocols: Pond (2 parties + dealer) and ABY3 (3 parties)."""

from privkeras.backends.mpc.protocols.aby3 import ABY3Protocol
from privkeras.backends.mpc.protocols.base import Protocol
from privkeras.backends.mpc.protocols.pond import PondProtocol

__all__ = ["ABY3Protocol", "PondProtocol", "Protocol"]
