"""``smscredits serve``: the HTTP service a gateway host points at (the ``serve`` extra).

- ``app``: the Starlette app, its routes, errors and access log;
- ``group``: group commit, the requests that arrive together charged in one transaction;
- ``auth``: bearer tokens and their roles;
- ``dlr``: Kannel's and Jasmin's delivery reports in their own shapes;
- ``metrics``: ``/metrics`` in Prometheus' format.

The charging core knows nothing of HTTP: this package parses, calls it, and answers.
"""
