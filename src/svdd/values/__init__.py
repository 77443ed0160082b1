"""Value functions ``value_fn(x_t, t) -> (B,)`` estimating the soft value."""

from .posterior_mean import PosteriorMeanValue, posterior_mean_value

__all__ = ["PosteriorMeanValue", "posterior_mean_value", "LearnedValue", "fit_value"]


def __getattr__(name):
    if name in ("LearnedValue", "fit_value", "load_value"):
        from . import learned

        return getattr(learned, name)
    raise AttributeError(name)
