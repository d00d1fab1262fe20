        %nm{{h}} = arith.addf {{acc}}, %zero : f32
        %none{{h}} = arith.cmpf oeq, %nm{{h}}, %ninf : f32
        %ref{{h}} = arith.select %none{{h}}, %zero, %nm{{h}} : f32
        %da{{h}} = arith.subf %m{{h}}, %ref{{h}} : f32
