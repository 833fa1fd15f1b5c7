from bench.plots import write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_writes_every_figure_as_a_png(synthetic_results, tmp_path):
    paths = write_plots(synthetic_results, tmp_path)
    assert sorted(p.name for p in paths) == ["reward_vs_cost.png", "survivors_per_round.png", "throughput.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


def test_skips_figures_without_data(synthetic_results, tmp_path):
    synthetic_results.throughput.clear()
    assert [p.name for p in write_plots(synthetic_results, tmp_path)] == ["reward_vs_cost.png", "survivors_per_round.png"]


def test_survivors_are_drawn_against_decision_positions_when_known(synthetic_results, tmp_path):
    import dataclasses

    from bench.plots import plot_survivors

    runs = [dataclasses.replace(run, decision_points=[8 * 2**k for k in range(len(run.survivors_per_round))])
            for run in synthetic_results.runs]
    path = plot_survivors(runs, tmp_path / "survivors.png", max_new_tokens=128)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
