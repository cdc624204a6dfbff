"""The availability checks of ``make test`` (quick scale); the sweep, churn and report
drivers they run are tools/availability/ (``make availability``)."""
