"""The exact offline analysis of savers and chains of savers, from records (numpy only).

What it is for: given records (each model's confidence, correctness and cost per sample), the
exact trade-off of a saver/base pair at every threshold (:mod:`~tinysaver.analysis.pair`: exit
curve, r_match, ΔC, the Tables 1/5 row, saver ranking), N-stage chains of savers
(:mod:`~tinysaver.analysis.stages`: simulation at given thresholds; :mod:`~tinysaver.analysis.tables`:
every threshold combination at once; :mod:`~tinysaver.analysis.search` and
:mod:`~tinysaver.analysis.descent`: the planner's search; :mod:`~tinysaver.analysis.plan`: its
answer and the oracle), thresholds with a guarantee (:mod:`~tinysaver.analysis.bounds`,
:mod:`~tinysaver.analysis.calibrate`: Learn then Test, a high-probability guarantee;
:mod:`~tinysaver.analysis.crc` and :mod:`~tinysaver.analysis.crc_calibrate`: conformal risk
control, a guarantee on the expected drop) and bootstrap intervals
(:mod:`~tinysaver.analysis.bootstrap`). Tables and plots of these results are :mod:`tinysaver.report`'s.

May import: the tinysaver core modules :mod:`tinysaver.errors`, :mod:`tinysaver.io`,
:mod:`tinysaver.records`, :mod:`tinysaver.thresholds`, :mod:`tinysaver.confidence` only; numpy
(and tqdm for progress bars). Never torch, matplotlib, :mod:`tinysaver.report`,
:mod:`tinysaver.runtime` or a plugin, not even inside a function.

Modules, lowest first: ``crc`` (the conformal risk control rule on arrays), ``pools`` and
``pair``; ``stages``; ``tables``; ``descent``; ``search``; ``bounds``; ``calibrate``;
``crc_calibrate``; ``bootstrap``; ``plan``. Each imports only modules before it.
"""
from __future__ import annotations

from ..thresholds import threshold_from_json, threshold_to_json
from .bootstrap import bootstrap_chain_ci, tradeoff_ci
from .bounds import METHODS, check_target, fixed_sequence
from .calibrate import (PATH_CELLS, Calibration, calibrate_chain, calibrate_pair, calibrate_records, certify_plan,
                        ltt_pair_threshold)
from .crc_calibrate import crc_calibrate_chain, crc_calibrate_pair, crc_calibrate_records, crc_certify_plan
from .descent import DEFAULT_PAIR_GRID, ChainDescent, DescentResult
from .pair import (COUNT_TOL, PAPER_DROPS, ExitCurve, MatchPoint, OperatingPoint, SaverScore, Tradeoff,
                   cheapest_within_drop, exit_curve, match_point, max_performance_index, meets_drop, rank_savers,
                   tradeoff, tradeoff_from_records)
from .plan import ChainPoint, Oracle, Plan, chain_from_records, oracle, plan_chains
from .pools import check_calibration, check_pool, split_pool
from .search import (DEFAULT_EXACT_CELLS, DEFAULT_GRID, GRID_TABLE_STAGES, MAX_CELLS, ChainSearch, Choice, Merged,
                     PlanSearch, chain_grids, count_chains, enumerate_chains, search_chains, search_plan,
                     search_tables, table_chains)
from .stages import CHUNK_CELLS, ChainEval, ChainStage, answering_stage, check_chain_records, simulate_chain
from .tables import (ChainTable, GridMeter, answer_table, cell_thresholds, chain_counts, chain_table, grid_cells,
                     grid_ranks, measure_cells, threshold_grid)

__all__ = [
    # pair (the old tinysaver.analysis module)
    "PAPER_DROPS", "COUNT_TOL", "ExitCurve", "exit_curve", "MatchPoint", "match_point", "cheapest_within_drop",
    "max_performance_index", "OperatingPoint", "Tradeoff", "meets_drop", "tradeoff", "tradeoff_from_records",
    "SaverScore", "rank_savers", "threshold_to_json", "threshold_from_json",
    # pools
    "split_pool", "check_pool", "check_calibration",
    # chains: stages, tables, search, descent, plan
    "CHUNK_CELLS", "ChainStage", "ChainEval", "check_chain_records", "answering_stage", "simulate_chain",
    "threshold_grid", "grid_ranks", "ChainTable", "answer_table", "chain_counts", "chain_table", "GridMeter",
    "measure_cells", "cell_thresholds", "grid_cells",
    "DEFAULT_GRID", "DEFAULT_EXACT_CELLS", "MAX_CELLS", "GRID_TABLE_STAGES", "ChainSearch", "Merged",
    "enumerate_chains", "chain_grids", "search_chains", "count_chains", "table_chains", "Choice", "PlanSearch",
    "search_tables", "search_plan", "DEFAULT_PAIR_GRID", "ChainDescent", "DescentResult",
    "ChainPoint", "Oracle", "Plan", "oracle", "plan_chains", "chain_from_records",
    # calibration and intervals
    "METHODS", "PATH_CELLS", "check_target", "fixed_sequence", "Calibration", "ltt_pair_threshold",
    "calibrate_pair", "calibrate_chain", "certify_plan", "calibrate_records", "bootstrap_chain_ci", "tradeoff_ci",
    "crc_calibrate_pair", "crc_calibrate_chain", "crc_certify_plan", "crc_calibrate_records",
]
