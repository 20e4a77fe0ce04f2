"""`docent eval`: answer and citation quality measured through the REST API, as a user sees it."""
