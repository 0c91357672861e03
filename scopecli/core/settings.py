"""Checks of a command's settings dataclass that run once per value, wherever they are asked for.

Why: settings pass through several entry points (the CLI, which must fail before loading a model; the
job function; the engine, which Python users call directly) and each must refuse bad values. Rather
than one of them "knowing" that another already checked, each `check()` asks every rule again, and a
rule runs only when the values of the fields it reads differ from the ones it last passed. So a
command validates each value once, and a field changed in between (collect's share, render's size
once the model is known) is checked again — just that rule.
"""

from __future__ import annotations


def reads(*fields: str):
    """Mark a method of a CheckedSettings class as a rule over these fields (rules run in definition order)."""

    def mark(method):
        method.checked_fields = fields
        return method

    return mark


class CheckedSettings:
    """Base of a settings dataclass whose `@reads(...)` methods raise ScopeError for values that cannot work."""

    def check(self) -> None:
        """Run every rule whose fields changed since it last passed (all of them the first time)."""
        passed = self.__dict__.setdefault("_passed_rules", {})
        for name, rule in vars(type(self)).items():
            fields = getattr(rule, "checked_fields", None)
            if fields is None:
                continue
            values = tuple(getattr(self, f) for f in fields)
            if name in passed and passed[name] == values:
                continue
            rule(self)
            passed[name] = values
