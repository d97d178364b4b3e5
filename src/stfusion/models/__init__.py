"""Models and baselines by name: ``stfusion.models.get("xfuse")`` returns the class,
``stfusion.models.available()`` lists the names (``stfusion methods`` prints them)."""

from stfusion.models.registry import available, get

__all__ = ["available", "get"]
