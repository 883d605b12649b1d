"""smscredits: manage the SMS credits of an SMS gateway's users.

The domain core (``ledger``, ``limits``, ``charging``, ``refills``, ``pricing``, ``parts``)
is importable without Typer or Rich; ``cli`` is a thin layer over it.
"""

__version__ = "0.1.0"
