"""Hexarch policy compiler: hexarch.yaml -> validated model -> IR -> OPA bundle."""
