          %acc:{{n}} = scf.for %kc = %c0 to %cK step %cKC iter_args({{inits}}) -> ({{types}}) {
{{stage}}
{{multiply}}
          }
{{store}}
