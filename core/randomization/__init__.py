"""Randomization methods, one small module each, behind one interface (see base)."""

from core.randomization.base import Assignment, AssignmentContext, ListExhausted, Method
from core.randomization.block import BlockMethod
from core.randomization.list_method import ListMethod
from core.randomization.minimization import MinimizationMethod
from core.randomization.simple import SimpleMethod

METHODS: dict[str, Method] = {
    method.name: method
    for method in (ListMethod(), BlockMethod(), MinimizationMethod(), SimpleMethod())
}

__all__ = ["METHODS", "Assignment", "AssignmentContext", "ListExhausted", "Method"]
