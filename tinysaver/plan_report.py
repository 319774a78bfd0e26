"""Temporary alias of :mod:`tinysaver.report.plan` for ``chain.plan_records`` (its function-level
import), until ``plan_records`` moves to :mod:`tinysaver.pipeline` at the issue-20 merge; then delete."""
from .report.plan import calibration_markdown, chain_markdown, plan_markdown, plot_plan

__all__ = ["calibration_markdown", "chain_markdown", "plan_markdown", "plot_plan"]
