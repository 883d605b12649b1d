"""The Core ``Table`` objects behind the models, for hot statements."""

from sqlalchemy import Table

from smscredits.storage import models

users: Table = models.metadata.tables["users"]
powers: Table = models.metadata.tables["powers"]
events: Table = models.metadata.tables["events"]
messages: Table = models.metadata.tables["messages"]
prices: Table = models.metadata.tables["prices"]
refill_plans: Table = models.metadata.tables["refill_plans"]
refill_applications: Table = models.metadata.tables["refill_applications"]
