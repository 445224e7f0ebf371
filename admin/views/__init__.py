"""The panel's pages, one module per concern; each adds its routes to the blueprint."""

from __future__ import annotations

from flask import Blueprint

from admin.panel import Panel


def register_views(blueprint: Blueprint, panel: Panel) -> None:
    from admin.views import activity, connections, dashboard, logs, techs, tokens

    for module in (dashboard, techs, connections, activity, tokens, logs):
        module.register(blueprint, panel)
