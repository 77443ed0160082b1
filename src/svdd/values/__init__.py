"""Value functions ``value_fn(x_t, t) -> (B,)`` estimating the soft value
``v_t(x_t) = alpha · log E[exp(r(x0)/alpha) | x_t]``: the posterior-mean (SVDD-PM) value and
learned Monte Carlo regressions (SVDD-MC)."""

from .learned import LearnedValue, fit_value, load_value, register_value_network
from .posterior_mean import PosteriorMeanValue, posterior_mean_value

__all__ = ["PosteriorMeanValue", "posterior_mean_value", "LearnedValue", "fit_value", "load_value",
           "register_value_network"]
