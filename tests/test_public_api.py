"""Docstring lint of the public API: every public name says what it is and why.

Checked: every name in ``eclearn.__all__`` and the public namespaces (``ecl.dual``,
``ecl.select``, ``ecl.measures``), and every public method or property a public class
defines itself — an override of a documented base-class method inherits its contract
(e.g. ``Formulation.term``) and is not required to repeat it.
"""

from __future__ import annotations

import inspect

import pytest

import eclearn as ecl

NAMESPACES = {
    "ecl": ecl,
    "ecl.dual": ecl.dual,
    "ecl.select": ecl.select,
    "ecl.measures": ecl.measures,
}


def public_names():
    for prefix, module in NAMESPACES.items():
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or name.startswith("__"):
                continue
            yield f"{prefix}.{name}", obj


def documented_by_a_base(cls, attribute: str) -> bool:
    for base in cls.__mro__[1:]:
        inherited = base.__dict__.get(attribute)
        if inherited is not None and inspect.getdoc(inherited):
            return True
    return False


def missing_docstrings() -> list[str]:
    missing = []
    for label, obj in public_names():
        if not (inspect.getdoc(obj) or "").strip():
            missing.append(label)
        if not inspect.isclass(obj):
            continue
        for attribute, member in vars(obj).items():
            if attribute.startswith("_") or not (
                inspect.isfunction(member)
                or isinstance(member, (property, classmethod, staticmethod))
            ):
                continue
            target = member.fget if isinstance(member, property) else member
            if isinstance(member, (classmethod, staticmethod)):
                target = member.__func__
            if (target.__doc__ or "").strip() or documented_by_a_base(obj, attribute):
                continue
            missing.append(f"{label}.{attribute}")
    return sorted(set(missing))


def test_every_public_name_and_method_has_a_docstring():
    missing = missing_docstrings()
    assert not missing, "public API without a docstring:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("cls", [ecl.Equality, ecl.Inequality])
def test_constraint_docstrings_carry_the_mathematics(cls):
    doc = inspect.getdoc(cls)
    assert "Lagrangian" in doc and ("μ" in doc or "λ" in doc) and len(doc.splitlines()) >= 6
