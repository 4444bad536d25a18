"""Calibrating the roofline timing model against measured operator latencies.

* :mod:`~tokensched.calibration.table`: the operator latency table (CSV), reading and writing it;
* :mod:`~tokensched.calibration.fit`: fitting :class:`~tokensched.timing.RooflineParams` to a table (numpy only);
* :mod:`~tokensched.calibration.coefficients`: the fitted-coefficients JSON file, shipped and user-made;
* :mod:`~tokensched.calibration.profile`: measuring a table on the user's hardware (``tokensched profile``).

The format and the shipped coefficients' sources and errors are documented in docs/timing.md ("Calibration").
"""
