"""Numbers as the reports print them."""
import math


def fmt(value: float, digits: int = 3) -> str:
    """`digits` significant digits, never in scientific notation (token counts reach the millions)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"
