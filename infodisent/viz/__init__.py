"""Pictures and words on top of the numbers (floor 7, above eval): plotly figures (:mod:`.plots`), the
self-contained HTML report of an opened run (:mod:`.report`) and the sentences built from results
(:mod:`.sentences`). Imports the floors below; never the run directory or the jobs."""
