"""The trade-off figure: what its axes say and which methods it marks (fairness/figures.py)."""
import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from fairness.figures import tradeoff_plot  # noqa: E402


def table():
    # a: best Dice, least fair; b: on the front; c: dominated by b (less Dice, less fair)
    return pd.DataFrame({"mean": [60.0, 55.0, 50.0], "mean_std": [1.0, 0.5, 0.5],
                         "sd_sex": [4.0, 1.0, 2.0], "sd_sex_std": [0.5, 0.2, 0.3],
                         "ser_sex": [1.5, 1.1, 1.2], "ser_sex_std": [0.1, 0.1, 0.1]},
                        index=pd.Index(["a", "b", "c"], name="method"))


def test_the_axes_name_the_class_whose_fairness_is_plotted():
    fig = tradeoff_plot(table(), "sex", fairness_of="kidney")
    left, right = fig.axes
    assert left.get_xlabel() == "SD of group mean kidney Dice by sex (%)  (fairer ←)"
    assert right.get_xlabel() == "SER of kidney Dice by sex  (fairer ←)"
    assert left.get_ylabel() == "mean Dice (%)"
    plain = tradeoff_plot(table(), "sex").axes[0].get_xlabel()
    assert plain == "SD of group mean Dice by sex (%)  (fairer ←)"


def test_the_front_and_the_best_method():
    left = tradeoff_plot(table(), "sex").axes[0]
    front = [line for line in left.get_lines() if line.get_label() == "Pareto front"][0]
    assert list(front.get_xdata()) == [1.0, 4.0] and list(front.get_ydata()) == [55.0, 60.0]   # c is dominated
    notes = {t.get_text(): t.xy for t in left.texts}
    assert notes == {"a": (4.0, 60.0), "b": (1.0, 55.0), "c": (2.0, 50.0)}
