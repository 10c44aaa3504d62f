"""Usage accounting of model calls, daily token budgets and operators' bans."""
