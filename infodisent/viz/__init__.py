"""Pictures on top of the numbers: plotly figures (:mod:`.plots`) and the self-contained HTML report
(:mod:`.report`)."""
