"""DiME-Aug: balanced planning of mixed pairs, audio rendering, export to disk, and the Grain input pipeline."""
