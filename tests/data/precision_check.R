# Outside reference for tests/test_precision.py: R (stats) and lme4 on fixtures/samples/precision.csv.
# Run from the repository root: Rscript tests/data/precision_check.R (Debian: apt-get install r-base-core r-cran-lme4)
suppressMessages(library(lme4))
d <- read.csv("fixtures/samples/precision.csv")
d$day <- factor(d$day); d$run <- factor(d$run)
for (s in c("L1","L2")) for (m in c("NEUT%","LYMPH%")) {
  x <- d[d$sample_id==s & d$measurand==m,]
  cat("==", s, m, "mean", sprintf("%.10f", mean(x$value)), "\n")
  if (s=="L1") { a <- anova(lm(value ~ day/run, x)); f <- lmer(value ~ 1 + (1|day) + (1|day:run), x, REML=TRUE) } else { a <- anova(lm(value ~ day, x)); f <- lmer(value ~ 1 + (1|day), x, REML=TRUE) }
  print(cbind(Df=a$Df, SS=sprintf("%.8f", a[["Sum Sq"]]), MS=sprintf("%.8f", a[["Mean Sq"]])))
  vc <- as.data.frame(VarCorr(f)); print(data.frame(grp=vc$grp, vcov=sprintf("%.8f", vc$vcov)))
}
# unbalanced: drop rows 11,12,17,37,45,56,57,68 of L1 NEUT%
x <- d[d$sample_id=="L1" & d$measurand=="NEUT%",][-c(11,12,17,37,45,56,57,68),]
a <- anova(lm(value ~ day/run, x)); print(cbind(Df=a$Df, SS=sprintf("%.8f", a[["Sum Sq"]])))
