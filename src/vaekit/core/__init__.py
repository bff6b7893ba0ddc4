"""The mathematics every model kind composes: distributions, priors, flows, objectives, metrics and
image losses. Pure functions and small modules over arrays; nothing here knows about configs,
data sources or run directories."""
