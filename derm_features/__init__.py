"""derm: Pinterest's Decoupled Entity Representation Model (DERM) as a Feast plugin.

The shared core lives here: the work-directory layout, the ad-log contract, the Redis
address, Feast plug-ins and the `derm` command line. Training lives in `trainers/`,
the daily aggregation in `materialize/`.
"""

__version__ = "0.1.0"
