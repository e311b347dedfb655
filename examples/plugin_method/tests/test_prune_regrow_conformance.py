"""Run ticketsearch's method conformance suite against this plugin: a subclass and a name is all it takes.

It trains the method end to end on scikit-learn's digits and checks what every method owes ticketsearch,
including a run killed in the middle of a level that resumes to the bit-identical masks and weights (which
is why the method keeps its random generator in its schedule's ``state_dict``).
"""

from ticketsearch.testing import MethodConformance


class TestPruneRegrowConformance(MethodConformance):
    method_name = "prune-regrow"  # looked up through the entry point, as users will
    method_args = {"every": 5}  # several moves within the suite's short budget
