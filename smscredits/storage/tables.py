"""The Core ``Table`` objects behind the models, for hot statements."""

from sqlalchemy import Table

from smscredits.storage import models

users: Table = models.User.__table__  # type: ignore[assignment]
powers: Table = models.Power.__table__  # type: ignore[assignment]
events: Table = models.Event.__table__  # type: ignore[assignment]
messages: Table = models.Message.__table__  # type: ignore[assignment]
prices: Table = models.Price.__table__  # type: ignore[assignment]
refill_plans: Table = models.RefillPlan.__table__  # type: ignore[assignment]
refill_applications: Table = models.RefillApplication.__table__  # type: ignore[assignment]
