"""The polynomial exponential-family core (pure torch): bases, quadrature, ``PolynomialFamily``.

```python
family = PolynomialFamily(dim=3, order=8)            # Legendre basis, auto quadrature
dist = family(natural_params)                        # (..., family.num_features)
dist.log_prob(x), dist.entropy(), dist.sample((n,)), dist.mode, dist.mean, dist.log_partition
```
"""

from mepoly_il.poly.basis import basis_table, legendre_table, monomial_table, multi_indices
from mepoly_il.poly.family import PolynomialDistribution, PolynomialFamily, QuadratureWarning

__all__ = [
    "PolynomialDistribution",
    "PolynomialFamily",
    "QuadratureWarning",
    "basis_table",
    "legendre_table",
    "monomial_table",
    "multi_indices",
]
