"""The upstream DERM model: user, Pin and interaction towers, SSL loss, logQ estimator."""
