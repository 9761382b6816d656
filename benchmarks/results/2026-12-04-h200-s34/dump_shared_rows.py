"""The CUDA-only refusal of test_core.test_shared_index_rows_at_a_batch_of_one[embedding_sequence_first]: the
backward graph the embedding rule refused (tok's values (5, 1, 6) beside indices (5, s77)), with the shape
environment's facts about the batch symbol, through batches 3, 1, 5 on CUDA (eager backend)."""
import sys

import torch

sys.path.insert(0, "tests")
import dpcompile  # noqa: E402
from dpcompile.passes import shapes  # noqa: E402
from helpers import check_against_reference  # noqa: E402
from rule_cases import CASES  # noqa: E402

original = shapes.match_term


def match_term(term, spec, batch):
    try:
        return original(term, spec, batch)
    except Exception:
        gm = term.graph.owning_module
        print("batch:", batch)
        print(gm.graph.python_code("self").src if gm is not None else term.graph)
        for node in term.graph.nodes:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                print(node.name, node.target, tuple(val.shape), tuple(val.stride()))
        fake = next(n.meta["val"] for n in term.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor))
        env = fake.fake_mode.shape_env
        print("replacements", env.replacements)
        print("ranges", {k: v for k, v in env.var_to_range.items()})
        print("guards", [str(g.expr) for g in env.guards][-30:])
        print("hints", env.var_to_val)
        raise


shapes.match_term = match_term
case = next(c for c in CASES["embedding"] if c.name == "embedding_sequence_first")
try:
    check_against_reference(case, policy="ghost", backend="eager", batches=(3, 1, 5), max_compilations=2)
    print("passed")
except Exception as e:
    print("FAILED", type(e).__name__, str(e)[:500])
